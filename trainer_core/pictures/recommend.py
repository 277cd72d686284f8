"""Scoring a strength sweep against its dataset, and the rule that recommends a strength and a checkpoint.

Every cell becomes a feature vector (a CLIP vision embedding, or the model-free ``latent_features`` of
its VAE latent); the dataset's images give a reference vector (their mean). Within a row, the
strength-0 cell is the baseline:

- **concept score** of a cell = how far it moved from the baseline toward the dataset, as a share of the
  way: its move projected on the line from the baseline to the dataset's mean, divided by that line's
  length (0 at the baseline, 1 at the dataset's mean, above 1 past it). Drift off that line (blur, colour
  casts, artefacts) does not count as likeness;
- **bleed** of a cell in a row without the trigger word = ``d(cell, baseline) / d(baseline, dataset)``:
  how far the LoRA moved a prompt that does not ask for it, in the same unit.

The rule (``recommend_strength``), in the spirit of the guides ("start at 0.7; too subtle, go up;
artefacts or overpowering, go down"): among the positive strengths whose mean bleed is at most
``BLEED_LIMIT``, the lowest one whose mean concept score reaches ``GAIN_SHARE`` of the best concept
score at any strength. Below ``MIN_GAIN`` at every strength there is no recommendation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

GAIN_SHARE = 0.8  # "most of the concept gain"
BLEED_LIMIT = 0.5  # bleed stays below half the way from the baseline to the dataset
MIN_GAIN = 0.15  # below this the LoRA barely moves toward the dataset at any strength
CHECKPOINT_TIE = 0.05  # net scores this close count as equal: the earlier checkpoint wins
QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)


def latent_features(latent: np.ndarray) -> np.ndarray:
    """A position-free description of one latent ``[channels, h, w]``: per channel, the quantiles of its
    values (how much of the picture has which content) and of its spatial differences (how much edge
    there is: a ring has twice a disc's outline). All in latent units, so no feature needs rescaling."""
    latent = np.asarray(latent, dtype=np.float64)
    flat = latent.reshape(latent.shape[0], -1)
    parts = [np.quantile(flat, QUANTILES, axis=1).T.ravel()]
    if latent.shape[1] > 1 or latent.shape[2] > 1:
        dy = np.abs(np.diff(latent, axis=1)).reshape(latent.shape[0], -1) if latent.shape[1] > 1 else None
        dx = np.abs(np.diff(latent, axis=2)).reshape(latent.shape[0], -1) if latent.shape[2] > 1 else None
        edges = np.concatenate([d for d in (dx, dy) if d is not None], axis=1)
        parts.append(np.quantile(edges, QUANTILES, axis=1).T.ravel())
    return np.concatenate(parts)


def unit(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1 (for embeddings compared by cosine)."""
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.maximum(np.linalg.norm(vectors, axis=-1, keepdims=True), 1e-12)


@dataclass
class RowScores:
    """One grid row's scores per strength column: ``concept`` for a row with the trigger word,
    ``bleed`` for one without it."""

    checkpoint: str
    has_trigger: bool
    values: list[float]


def score_rows(cell_features: Sequence[np.ndarray], reference: np.ndarray, baseline_column: int,
               row_info: Sequence[tuple[str, bool]]) -> list[RowScores]:
    """``cell_features[row]`` is ``[columns, features]``; ``row_info[row]`` is (checkpoint, has trigger)."""
    out = []
    for features, (checkpoint, has_trigger) in zip(cell_features, row_info, strict=True):
        features = np.asarray(features, dtype=np.float64)
        base = features[baseline_column]
        span = float(np.linalg.norm(base - reference))
        if span < 1e-9:  # the baseline already is the dataset: nothing to measure against
            values = [float("nan")] * len(features)
        elif has_trigger:
            values = [float((f - base) @ (reference - base)) / span**2 for f in features]
        else:
            values = [float(np.linalg.norm(f - base)) / span for f in features]
        out.append(RowScores(checkpoint, has_trigger, values))
    return out


@dataclass
class Recommendation:
    """What the rule chose for one LoRA file (``strength`` None: no recommendation, ``reason`` says why)."""

    checkpoint: str
    strengths: list[float]
    concept: list[float]  # mean concept score per strength (NaN where there is no trigger row)
    bleed: list[float]  # mean bleed per strength (NaN where there is no row without the trigger)
    strength: float | None = None
    reason: str = ""

    def at(self, values: list[float]) -> float:
        return values[self.strengths.index(self.strength)] if self.strength is not None else float("nan")

    @property
    def net(self) -> float:
        """The best concept score minus bleed at a positive strength whose bleed is within the limit (what the
        checkpoint rule compares)."""
        nets = [c - (0.0 if np.isnan(b) else b) for s, c, b in zip(self.strengths, self.concept, self.bleed, strict=True)
                if s > 0 and not np.isnan(c) and not b > BLEED_LIMIT]
        return max(nets, default=float("nan"))


def _mean(rows: Sequence[RowScores], column: int) -> float:
    values = [row.values[column] for row in rows if not np.isnan(row.values[column])]
    return float(np.mean(values)) if values else float("nan")


def recommend_strength(checkpoint: str, strengths: Sequence[float], rows: Sequence[RowScores]) -> Recommendation:
    """The rule in the module docstring, for the rows of one LoRA file."""
    concept_rows = [row for row in rows if row.has_trigger]
    bleed_rows = [row for row in rows if not row.has_trigger]
    result = Recommendation(checkpoint, list(strengths), [_mean(concept_rows, c) for c in range(len(strengths))],
                            [_mean(bleed_rows, c) for c in range(len(strengths))])
    if not concept_rows:
        result.reason = "no prompt has the trigger word, so no row shows the concept: add a {trigger} prompt"
        return result
    candidates = [c for c, s in enumerate(strengths) if s > 0 and not np.isnan(result.concept[c])]
    if not candidates:
        result.reason = "no positive strength to choose from: add strengths above 0"
        return result
    best = max(result.concept[c] for c in candidates)
    if best < MIN_GAIN:
        result.reason = (f"the concept score stays below {MIN_GAIN:g} at every strength (best {best:.2f}): the LoRA "
                         "barely moves toward the dataset; train longer or check the trigger word")
        return result
    low_bleed = [c for c in candidates if np.isnan(result.bleed[c]) or result.bleed[c] <= BLEED_LIMIT]
    if not low_bleed:
        result.reason = (f"bleed is above {BLEED_LIMIT:g} at every strength: the LoRA changes prompts without the "
                         "trigger word too much; use a lower strength than this sweep has, or retrain with more "
                         "varied captions")
        return result
    reaching = [c for c in sorted(low_bleed, key=lambda c: strengths[c]) if result.concept[c] >= GAIN_SHARE * best]
    if reaching:
        chosen = reaching[0]
        result.reason = (f"the lowest strength reaching {GAIN_SHARE:.0%} of the best concept score ({best:.2f}) with "
                         f"bleed at most {BLEED_LIMIT:g}")
    else:
        chosen = max(low_bleed, key=lambda c: result.concept[c])
        result.reason = (f"the best concept score with bleed at most {BLEED_LIMIT:g}; higher strengths reach more "
                         "but bleed too much")
    result.strength = float(strengths[chosen])
    return result


def recommend_checkpoint(recommendations: Sequence[Recommendation]) -> Recommendation | None:
    """Of several files of one training (each with a recommended strength), the one reaching the highest concept
    score minus bleed at a strength whose bleed is within the limit; within ``CHECKPOINT_TIE`` of that, the
    earliest in the list (the caller lists them by training steps: less trained, less overfit)."""
    chosen = [r for r in recommendations if r.strength is not None]
    if not chosen:
        return None
    top = max(r.net for r in chosen)
    return next(r for r in chosen if r.net >= top - CHECKPOINT_TIE)


def rule_text() -> str:
    return (f"rule: the lowest strength whose concept score reaches {GAIN_SHARE:.0%} of the best, among those "
            f"with bleed <= {BLEED_LIMIT:g}; none when the best concept score is below {MIN_GAIN:g}")


def recommendation_metadata(chosen: Recommendation, scorer: str, checkpoint: Recommendation | None,
                            ) -> Mapping[str, str]:
    """The keys written into the LoRA file's metadata."""
    import json

    out = {
        "lora_lab_recommended_strength": f"{chosen.strength:g}",
        "lora_lab_recommendation": json.dumps({
            "strength": chosen.strength, "reason": chosen.reason, "scorer": scorer,
            "concept_score": round(chosen.at(chosen.concept), 4),
            "bleed": None if np.isnan(chosen.at(chosen.bleed)) else round(chosen.at(chosen.bleed), 4),
        }, sort_keys=True),
    }
    if checkpoint is not None:
        out["lora_lab_recommended_checkpoint"] = checkpoint.checkpoint
    return out
