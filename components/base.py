"""What every SutazAI component shares: its container image and decorator options."""

import functools
import os

from kfp import dsl

#: The image a Kubeflow cluster runs the steps in: SutazAI and its pinned dependencies
#: (built from this repository; see infra/). Locally, steps run in this Python instead.
IMAGE = os.environ.get("SUTAZAI_KFP_IMAGE", "sutazai/platform:0.1.0")

#: ``install_kfp_package=False``: the image already has the pinned kfp, and an air-gapped
#: cluster could not pip-install it at step start anyway.
component = functools.partial(dsl.component, base_image=IMAGE, install_kfp_package=False)
