"""The model ``sendwise serve`` scores with out of the box, shipped inside the package.

A fresh install has no message log to train on, yet its first decisions should already be
timed by a model that beats the smoothed-histogram heuristic on real behaviour. So the
package carries one: a LightGBM ranker trained on the real activity sample (58,869 grocery
trips of 1,224 households, public domain: ``docs/model.md``), which passed its champion
gate on the sample's two held-out months. It learns "when is this person active" from the
same profile features every tenant's events build, so it transfers to any activity log;
it knows nothing of channels or fatigue, which a model trained on the platform's own logs
learns (``sendwise train``, then ``POST /v1/models/reload``).

``training.bundled_model`` rebuilds it (after a change of the feature layout the artifact's
feature hash no longer matches and serving refuses it: a test says so first).
"""

from __future__ import annotations

from pathlib import Path

#: the artifact directory (``manifest.json`` + ``model.txt``), package data
BUNDLED_MODEL_DIR = Path(__file__).resolve().parent / "bundled"

#: ``SENDWISE_MODEL_DIR`` / ``sendwise serve --model`` value that scores with the
#: smoothed-histogram heuristic instead of any model
HEURISTIC_CHOICE = "heuristic"
