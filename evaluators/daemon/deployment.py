"""Keeping the best checkpoint the served one (`evaluator.remote.deploy_best`).

Why a part of its own: after every evaluation, failed or not, the best checkpoint may have
changed (or a deployment may have failed and be due again); the scheduler calls `follow`
and knows nothing of model ids or the deployment history. The deploying itself, its
history and rollback live in evaluators/remote/deploy.py; this module only picks what to
deploy and publishes the deployer's figures.
"""

from __future__ import annotations

from pathlib import Path

from evaluators.families import Samples, add, add_each
from evaluators.remote.deploy import Deployer
from evaluators.state import State
from tunewatch.core.config import RemoteConfig


class BestDeployment:
    """Deploys the state's best checkpoint through a Deployer; failures are only counted."""

    def __init__(self, deployer: Deployer, remote: RemoteConfig, run: str) -> None:
        self.deployer = deployer
        self.remote = remote
        self.run = run

    def follow(self, state: State) -> None:
        """The best checkpoint is (again) the served one; nothing evaluated, nothing to do."""
        best = state.best_step()
        if best is None:
            return
        path = Path(state.checkpoints[best]["path"])
        model_id = self.remote.model_id_for(self.run, path.name, best)
        self.deployer.deploy_quietly(model_id, path, best)

    def samples(self, out: Samples) -> None:
        """Deployments and rollbacks recorded, the deployed step, failures by reason."""
        deploys = self.deployer.samples()
        add(out, "tunewatch_eval_deployments", {}, deploys["deployments"])
        add(out, "tunewatch_eval_deployment_rollbacks", {}, deploys["rollbacks"])
        add(out, "tunewatch_eval_deployed_checkpoint_step", {}, deploys["deployed_step"])
        add_each(out, "tunewatch_eval_deployment_failures", "reason", deploys["failures"])
