"""The production profile: PostgreSQL and Redis instead of the embedded SQLite files, the
local servers SutazAI starts for it, and moving an embedded home onto them."""
