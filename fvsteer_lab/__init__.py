"""fvsteer's lab: the offline science around the server — the evaluation sets' readers, analogy and alignment
measurements, the combiner's fit and the starter bank's build. The server never imports it; it imports the server."""
