"""Self-improvement: training data and its gates, architecture search, fine-tuning,
champion/challenger promotion and regression monitoring."""
