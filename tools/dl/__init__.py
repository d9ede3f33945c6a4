"""Stage 3b, the DL arms: 2D ROI crops, the six networks, the bundles' contract (:mod:`.components`), the training
engine, cross-fitting of the MC and FF arms, frozen scoring and Grad-CAM."""
