"""SutazAI's local stack: Airflow, MLflow and Prometheus as real servers on 127.0.0.1.

``make up`` / ``make down`` / ``make status`` drive it; ``make run`` uses its Airflow
environment to run the nightly DAG. It lives outside the core library on purpose: the
core knows nothing about Airflow.
"""
