"""Small pieces every layer of the lab shares: file reads on Spark, atomic writes, ports."""
