"""Training: one model per group on Spark, and the Keras models the lab builds (CNN, ResNet-50)."""
