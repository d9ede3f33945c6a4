"""Stage 3a, radiomics: PyRadiomics features of every phase (parallel, cached, with provenance) and reader ICC."""
