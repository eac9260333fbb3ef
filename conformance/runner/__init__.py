"""The suite's machinery: turns a scenario into a graded result on an implementation.

Scenario runner and grading (:mod:`.casework`), the rule registry (:mod:`.rules`), reports
(:mod:`.report`) and the pytest plugin for cases (:mod:`.plugin`). The lab it drives lives in
:mod:`harness`; the model it grades against in :mod:`impl`.
"""
