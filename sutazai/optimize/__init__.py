"""Model optimisation: format conversion, quantisation, with lineage."""
