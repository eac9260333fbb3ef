"""The ``lvsconf`` command line and the pytest entry point: the layer on top of the model
(:mod:`impl`), the lab (:mod:`harness`) and the suite (:mod:`conformance`)."""
