"""KFP pipelines composed of ``components``, and the runner that runs or submits them."""
