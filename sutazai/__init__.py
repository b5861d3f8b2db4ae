"""SutazAI: a local-first MLOps platform for large language models.

The core library: every capability as plain, typed Python that knows nothing about
Airflow or Kubeflow, so that components, pipelines and DAGs can stay thin wrappers.
"""

__version__ = "0.1.0"
