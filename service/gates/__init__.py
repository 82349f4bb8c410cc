"""Gates: pass / fail / inconclusive verdicts on a job's results, for CI release pipelines."""
