-- One 14-word sentence per request (the issue's single-sentence workload).
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"texts": ["The quick brown fox jumps over the lazy dog near the quiet river bank today"]}'
