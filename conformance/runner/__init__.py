"""The suite's machinery: turns a scenario into a graded result on an implementation.

The scenario runner (:mod:`.case`), what the wire should show (:mod:`.outcomes`), template
comparison (:mod:`.templates`), grading (:mod:`.grading`), failure evidence (:mod:`.evidence`),
the rule registry (:mod:`.rules`), reports
(:mod:`.report`) and the pytest plugin for cases (:mod:`.plugin`). The lab it drives lives in
:mod:`harness`; the model it grades against in :mod:`impl`.
"""
