"""Convert legacy stable-baselines pickles into the SB2 zip format, without running their code."""
