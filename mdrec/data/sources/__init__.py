"""Data sources: synthetic, MovieLens, Ali-CCP, AliExpress, KuaiRand, tabular files -> prepared column stores."""
