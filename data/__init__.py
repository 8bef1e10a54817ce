"""Data preparation: downloads (fetch.py, downloader.py), Wikipedia text formatting,
sentence sharding and HDF5 creation, driven by bertPrep.py and create_datasets_from_start.sh.
data/sample/ holds a small corpus for the quick start."""
