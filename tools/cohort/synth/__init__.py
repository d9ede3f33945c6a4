"""The synthetic cohort with known ground truth: the tables and their exact posterior (:mod:`.cohort`), the
rendered images (:mod:`.images`) and their DICOM form (:mod:`.dicom`)."""
