"""Measuring and telling: quality checks, metrics against a ground truth, held-out evaluation, the grade and its gates,
photo diagnostics, the HTML report (done and failed jobs) and its 3-D viewer. May use geometry/ and imaging/, never
the reverse."""
