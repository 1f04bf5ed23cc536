"""Exit codes of ``mlflow-finops``: part of the interface (cron and CI read them)."""

EXIT_OK = 0
EXIT_INTERNAL = 1  # a bug or an unreachable service
EXIT_BAD_INPUT = 2  # bad input or configuration
EXIT_CAPPED = 3  # `retrain`: the job stopped at its cost cap
EXIT_RETRAIN = 10  # `drift check`, `schedule`: retrain recommended
EXIT_BUDGET_WARN = 11  # `budget --check`: some envelope is past its warn_at share
EXIT_BLOCKED = 12  # `retrain`: no job ran (out of budget, dropped, or still waiting for a window)
EXIT_NOT_PROMOTED = 0  # `retrain`: the job ran; its challenger was not better
