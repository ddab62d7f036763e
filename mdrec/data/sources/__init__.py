"""Data sources: synthetic, MovieLens, generic tabular files -> prepared column stores."""
