"""The labelling loop: labelling tools' exports in (:mod:`.cvat`, :mod:`.labelstudio`, :mod:`.labelme`, written by
:mod:`.dataset`), what to label next out."""
