"""What a reader sees: the paper's tables, every figure (plots, nomogram, learning curves, Grad-CAM), the
multicentre tables and the HTML pages (the study report and the external-evaluation page)."""
