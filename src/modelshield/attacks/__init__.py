"""Model-extraction attacks against your own deployment (experimental: names may still change).

Every attack is estimator-like: parameters in ``__init__`` (explicit keywords, a row ``budget``,
``random_state``), then ``run(target, evaluation=...) -> AttackResult``. A :class:`Target` is an
in-process :class:`PredictorTarget` or a gateway over HTTP (to come); wrap any target in
:class:`ObservedTarget` to let a detector watch the exact query stream an attack sends.

=========================  ==============================================================
attack                     paper
=========================  ==============================================================
:class:`EquationSolving`   Tramèr et al., USENIX Security 2016 (logistic, softmax, MLP)
:class:`PathFinding`       Tramèr et al., USENIX Security 2016 (decision trees)
:class:`Copycat`           Correia-Silva et al., IJCNN 2018
:class:`KnockoffNets`      Orekondy et al., CVPR 2019
:class:`JacobianAugmentation`  Papernot et al., AsiaCCS 2017
:class:`ActiveThief`       Pal et al., AAAI 2020 (uncertainty, k-center)
:class:`UniformNoise`      random queries (the Knockoff "random" pool)
:class:`LineSearch`        Tramèr et al. 2016, after Lowd and Meek, KDD 2005
=========================  ==============================================================
"""

from __future__ import annotations

from modelshield.attacks._active import ActiveThief, Strategy
from modelshield.attacks._base import Attack
from modelshield.attacks._equation import EquationSolving, LinearModel, ModelFamily
from modelshield.attacks._http import HttpTarget, RemoteVictim
from modelshield.attacks._jacobian import JacobianAugmentation
from modelshield.attacks._knockoff import (
    Copycat,
    KnockoffNets,
    LabelKind,
    PoolKind,
    shift_images,
)
from modelshield.attacks._matrix import (
    BenignCost,
    Defence,
    MatrixResult,
    MatrixRun,
    ShieldTarget,
    moved_pool,
    run_matrix,
    standard_defences,
)
from modelshield.attacks._mlp import NumpyMLP
from modelshield.attacks._pathfinding import LeafBoxes, PathFinding
from modelshield.attacks._probes import LineSearch, UniformNoise
from modelshield.attacks._redteam import RedteamConfig, load_redteam_config, run_redteam
from modelshield.attacks._registry import ATTACKS, make_attack, run
from modelshield.attacks._report import render_matrix_html
from modelshield.attacks._result import AttackResult, CopyModel, Evaluation, Outcome
from modelshield.attacks._target import (
    Answer,
    AttackStopped,
    BudgetedTarget,
    ObservedTarget,
    Observer,
    OutputTransform,
    PredictorTarget,
    StopEvent,
    Target,
)
from modelshield.attacks._thief import MLPThief, SklearnThief, Thief, TorchThief, as_thief

__all__ = [
    "ATTACKS",
    "ActiveThief",
    "Answer",
    "Attack",
    "AttackResult",
    "AttackStopped",
    "BenignCost",
    "BudgetedTarget",
    "CopyModel",
    "Copycat",
    "Defence",
    "EquationSolving",
    "Evaluation",
    "HttpTarget",
    "JacobianAugmentation",
    "KnockoffNets",
    "LabelKind",
    "LeafBoxes",
    "LineSearch",
    "LinearModel",
    "MLPThief",
    "MatrixResult",
    "MatrixRun",
    "ModelFamily",
    "NumpyMLP",
    "ObservedTarget",
    "Observer",
    "Outcome",
    "OutputTransform",
    "PathFinding",
    "PoolKind",
    "PredictorTarget",
    "RedteamConfig",
    "RemoteVictim",
    "ShieldTarget",
    "SklearnThief",
    "StopEvent",
    "Strategy",
    "Target",
    "Thief",
    "TorchThief",
    "UniformNoise",
    "as_thief",
    "load_redteam_config",
    "make_attack",
    "moved_pool",
    "render_matrix_html",
    "run",
    "run_matrix",
    "run_redteam",
    "shift_images",
    "standard_defences",
]
