"""Benchmarks: speed, gas and detection. A regular package, because the installed `cchecksum`
distribution ships a top-level `benchmarks` package that would otherwise shadow this folder."""
