"""The store box: model bundles on disk and the folder of built models under $GPUX_HOME."""
