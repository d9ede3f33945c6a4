"""Stage 4, orchestration: the study's cached stages, configuration, fusion and statistics stages, the choice of
the DL model, Grad-CAM figures, the frozen model and its use on new patients (:mod:`.predict`, the entry point the
Deploy runtime uses). The only code that knows the whole study folder."""
