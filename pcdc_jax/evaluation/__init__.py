"""Evaluation: classical and learned codecs behind one interface, rate-distortion studies,
Bjontegaard deltas, detection on reconstructions, and the HTML report (driven by `eval/`)."""
