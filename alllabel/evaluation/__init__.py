"""The paper's evaluation protocol: F1 against pool size for ALLabel and baselines."""
