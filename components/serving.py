"""Deploy step: prove the selected champion serves.

No ``from __future__ import annotations`` in component modules: KFP reads the annotations.
"""

from components.base import component


@component
def deploy_champion(selections: list[dict]) -> dict:
    """Start the default task's champion exactly as ``sutazai serve`` does, health-check it
    and ask it one question; returns the answer (empty when the task has no champion).

    On one machine this is the whole deployment check; a long-running serving Service on
    the cluster is rolled by the deployment manifests in ``infra/``.
    """
    from sutazai.config import load_settings
    from sutazai.workflows.nightly import SelectionOutcome, deploy_champion

    answer = deploy_champion(load_settings(),
                             [SelectionOutcome.model_validate(s) for s in selections])
    return answer.model_dump() if answer else {}
