"""The bench box: timing statistics, the environment a figure was taken in, and benchmark runs."""
