"""Selection: the pure rules that rank candidates under SLOs, the promotion rule of a
challenger, and the store that reads and writes both in MLflow."""
