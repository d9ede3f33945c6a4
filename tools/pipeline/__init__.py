"""Stage 4, orchestration: the study's cached stages, configuration, fusion and statistics stages, the frozen
model and its use on new patients. The only code that knows the whole study folder."""
