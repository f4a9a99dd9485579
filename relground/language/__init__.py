"""The language layer: vocabularies (``vocab``), GloVe word vectors and the category prior (``glove``),
and relations between annotated phrases parsed from captions (``relations``)."""
