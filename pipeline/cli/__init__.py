"""The command-line shells: argument parsing, one-line errors and exit codes, nothing else.

audit.py is `gradcam-audit`, merge.py `gradcam-audit-merge`, report.py `gradcam-audit-report`.
The work they start lives in the stages (pipeline.run, pipeline.shards, pipeline.report).
"""
