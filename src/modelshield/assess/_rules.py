"""OWASP ML05:2023 risk factors of a deployment, scored from its configuration and red-team results.

Each factor is scored 1 (low risk) to 5 (high risk), as OWASP's ML Top 10 rates its risks:

- **exploitability**: how easily a thief copies the model (through the API or the file);
- **detectability**: how likely a theft goes *unnoticed* (5: nobody would see it);
- **technical impact**: how badly a theft hurts (5: the copy cannot be proven ours or traced).

Every finding names its reason and what to change. Scores start at 1 and each finding adds its
weight; measured red-team results, when given, add or remove weight where they contradict what the
configuration promises.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from modelshield.config import Config, TierConfig
from modelshield.errors import InvalidInputError

Factor = Literal["exploitability", "detectability", "impact"]
FACTORS: tuple[Factor, ...] = ("exploitability", "detectability", "impact")
SEALED_MAGIC = b"\x89MSEAL\r\n"
_SCORE_RETURNING = ("probabilities",)


@dataclass(frozen=True)
class Finding:
    """One reason a factor scores higher (``weight`` > 0) or lower (``weight`` < 0)."""

    factor: Factor
    weight: int
    title: str
    reason: str
    fix: str


@dataclass(frozen=True)
class Assessment:
    """The three factor scores (1-5), the overall rating and the findings behind them."""

    exploitability: int
    detectability: int
    impact: int
    findings: tuple[Finding, ...] = field(default_factory=tuple)

    @property
    def overall(self) -> float:
        """The mean of the three factors (OWASP's way of combining likelihood and impact)."""
        return round((self.exploitability + self.detectability + self.impact) / 3, 2)

    @property
    def rating(self) -> str:
        return "high" if self.overall >= 3.5 else "medium" if self.overall >= 2.2 else "low"

    def to_dict(self) -> dict[str, Any]:
        return {
            "exploitability": self.exploitability,
            "detectability": self.detectability,
            "impact": self.impact,
            "overall": self.overall,
            "rating": self.rating,
            "findings": [f.__dict__ for f in self.findings],
        }


def _hardens(tier: TierConfig) -> tuple[bool, int | None]:
    """Whether the tier changes the scores at all, and the rounding decimals if it rounds."""
    steps = [s.split(":")[0] for s in tier.output]
    decimals = next((int(s.split(":")[1]) for s in tier.output if s.startswith("round:")), None)
    hardened = any(s not in _SCORE_RETURNING for s in steps)
    return hardened, decimals


def _tier_findings(name: str, tier: TierConfig) -> list[Finding]:
    out: list[Finding] = []
    hardened, decimals = _hardens(tier)
    labels_only = "labels" in tier.output
    if not hardened:
        out.append(Finding(
            "exploitability", 2, f"tier {name}: returns full-precision probabilities",
            "full scores let equation-solving recover linear models exactly and make copies "
            "converge in far fewer queries (Tramèr et al. 2016)",
            f'set [tiers.{name}] output = ["top_k:1", "round:2"] or ["labels"]',
        ))  # fmt: skip
    elif (
        not labels_only
        and (decimals is None or decimals >= 4)
        and not any(s.startswith(("top_k", "reverse_sigmoid", "noise")) for s in tier.output)
    ):
        out.append(Finding(
            "exploitability", 1, f"tier {name}: scores returned with 4 or more decimals",
            "fine-grained scores still carry most of the information a thief needs",
            f"add round:2 (or top_k:1) to [tiers.{name}] output",
        ))  # fmt: skip
    period = tier.budget_seconds or 10 * 365 * 86400.0
    rows_per_day = tier.budget_rows * 86400.0 / period
    if rows_per_day > 1_000_000:
        out.append(Finding(
            "exploitability", 2, f"tier {name}: no meaningful per-client budget",
            f"{tier.budget_rows:,} rows per {tier.budget_period}: enough to copy most models",
            f"lower [tiers.{name}] budget_rows to what an honest client needs",
        ))  # fmt: skip
    elif rows_per_day > 50_000:
        out.append(Finding(
            "exploitability", 1, f"tier {name}: a generous per-client budget",
            f"{tier.budget_rows:,} rows per {tier.budget_period} lets one key run a full "
            "Knockoff-style extraction",
            f"lower [tiers.{name}] budget_rows",
        ))  # fmt: skip
    if tier.max_batch_rows > 1000:
        out.append(Finding(
            "exploitability", 1, f"tier {name}: very large batches",
            f"{tier.max_batch_rows} rows per request make bulk extraction cheap",
            f"lower [tiers.{name}] max_batch_rows",
        ))  # fmt: skip
    return out


def _is_sealed(path: Path) -> bool:
    try:
        with path.open("rb") as handle:
            return handle.read(len(SEALED_MAGIC)) == SEALED_MAGIC
    except OSError:
        return False


def _config_findings(config: Config) -> list[Finding]:
    out: list[Finding] = []
    for name, model in config.models.items():
        if not _is_sealed(model.path):
            out.append(Finding(
                "exploitability", 2, f"model {name}: stored unsealed",
                f"{model.path.name} is plaintext on disk: anyone who copies the file has the model",
                f"modelshield seal {model.path.name} -o {name}.sealed -r server.pub --sign "
                "owner.signing.key, and point [models] path at it",
            ))  # fmt: skip
        elif model.require_signer is None:
            out.append(Finding(
                "impact", 1, f"model {name}: origin not checked",
                "unsigned or foreign artifacts would be served (a swapped model goes unnoticed)",
                f'set [models.{name}] require_signer = "keys/owner.signing.pub"',
            ))  # fmt: skip
    for name, tier in config.tiers.items():
        out.extend(_tier_findings(name, tier))
    if config.server.workers > 1 and config.state.url.startswith("memory://"):
        out.append(Finding(
            "exploitability", 1, "limits kept per process",
            f"{config.server.workers} workers each keep their own budget in memory: a client "
            "gets several budgets",
            '[state] url = "redis://..." shares limits between workers and replicas',
        ))  # fmt: skip
    if not config.detection.enabled:
        out.append(Finding(
            "detectability", 2, "no extraction detector",
            "nothing watches query streams: an extraction runs until its budget ends, unseen",
            "[detection] enabled = true",
        ))  # fmt: skip
    elif config.detection.action == "alert":
        out.append(Finding(
            "detectability", 1, "detection only alerts",
            "a flagged client keeps full service until someone acts",
            '[detection] action = "degrade" or "block"',
        ))  # fmt: skip
    if config.audit.key is None:
        out.append(Finding(
            "detectability", 2, "audit log not keyed",
            "without an audit key the gateway cannot chain and verify its query log",
            'add [audit] key = { file = "keys/audit.key" } (modelshield init writes one)',
        ))  # fmt: skip
    if not config.watermark.enabled:
        out.append(Finding(
            "impact", 1, "no response watermark",
            "a copy trained on the API's answers cannot be traced to the client who made it",
            "[watermark] enabled = true",
        ))  # fmt: skip
    certificate = config.evidence.certificate
    if certificate is None or not certificate.exists():
        out.append(Finding(
            "impact", 1, "no ownership certificate",
            "no signed, timestamped record shows the model was ours first",
            "modelshield certify MODEL --owner ... --signing-key owner.signing.key -o cert.json, "
            "then [evidence] certificate = \"cert.json\"",
        ))  # fmt: skip
    if config.server.host not in ("127.0.0.1", "localhost", "::1"):
        out.append(Finding(
            "exploitability", 1, "gateway listens beyond loopback",
            f"host {config.server.host}: make sure TLS terminates in front of it",
            'bind to 127.0.0.1 behind a TLS reverse proxy',
        ))  # fmt: skip
    return out


def _redteam_findings(results: Mapping[str, Any]) -> list[Finding]:
    out: list[Finding] = []
    if not isinstance(results, Mapping) or not isinstance(results.get("runs", []), list):
        raise InvalidInputError("not red-team results: expected an object with a 'runs' list")
    runs = [
        r
        for r in results.get("runs", [])
        if isinstance(r, Mapping)
        and isinstance(r.get("fidelity", 0.0), int | float)
        and not isinstance(r.get("fidelity", 0.0), bool)
    ]
    defended = [r for r in runs if r.get("defence") not in (None, "none")]
    if not defended:
        return out
    best = max(float(r.get("fidelity", 0.0)) for r in defended)
    worst_run = max(defended, key=lambda r: float(r.get("fidelity", 0.0)))
    if best >= 0.9:
        out.append(Finding(
            "exploitability", 1, "measured: a defended copy reached high fidelity",
            f"{worst_run.get('attack')} against {worst_run.get('defence')} reached "
            f"{best:.0%} fidelity with {worst_run.get('budget')} queries",
            "lower budgets, return labels only or enable detection with block",
        ))  # fmt: skip
    elif best <= 0.6:
        out.append(Finding(
            "exploitability", -1, "measured: defences held",
            f"no attack got above {best:.0%} fidelity against the defended settings",
            "keep the defences on; re-run the red team after changes",
        ))  # fmt: skip
    detected = [r for r in defended if r.get("detected_at") is not None]
    if defended and not detected:
        out.append(Finding(
            "detectability", 1, "measured: no attack was detected",
            "the red team ran to its budget without a flag",
            "enable or recalibrate [detection]",
        ))  # fmt: skip
    elif len(detected) == len(defended):
        out.append(Finding(
            "detectability", -1, "measured: every attack was detected",
            f"detected within {max(int(r['detected_at']) for r in detected)} queries at most",
            "keep detection with a blocking action",
        ))  # fmt: skip
    return out


def assess(config: Config, redteam: Mapping[str, Any] | None = None) -> Assessment:
    """Score ``config`` (and measured ``redteam`` results) in OWASP ML05's three factors."""
    findings = _config_findings(config)
    if redteam is not None:
        findings.extend(_redteam_findings(redteam))
    base = {"exploitability": 1, "detectability": 1, "impact": 2}  # a stolen model is a loss
    scores = {
        factor: max(1, min(5, base[factor] + sum(f.weight for f in findings if f.factor == factor)))
        for factor in FACTORS
    }
    return Assessment(
        exploitability=scores["exploitability"],
        detectability=scores["detectability"],
        impact=scores["impact"],
        findings=tuple(sorted(findings, key=lambda f: (FACTORS.index(f.factor), -f.weight))),
    )
