"""Numbers fixed by the data format rather than chosen per run."""

# Side of insightface's standard aligned face crop (arcface_torch, the 5-point template): the
# frame of every landmark the project stores and the size of every delivered image.
CROP_SIZE = 112
