"""A stand-in AI agent for the demo on a real cluster: it spends RATE tokens per second of
MODEL (3/4 input, 1/4 output) and exports them as OpenTelemetry GenAI metrics on :9464."""
import http.server
import os
import time

START = time.time()
RATE = float(os.environ.get("RATE", "300"))
MODEL = os.environ.get("MODEL", "gpt-4o-mini")


class Metrics(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        spent = int((time.time() - START) * RATE)
        lines = ["# TYPE gen_ai_client_token_usage histogram"]
        for kind, tokens in (("input", spent * 3 // 4), ("output", spent - spent * 3 // 4)):
            labels = f'gen_ai_token_type="{kind}",gen_ai_request_model="{MODEL}"'
            lines.append(f'gen_ai_client_token_usage_bucket{{{labels},le="+Inf"}} {spent}')
            lines.append(f"gen_ai_client_token_usage_sum{{{labels}}} {tokens}")
            lines.append(f"gen_ai_client_token_usage_count{{{labels}}} {spent}")
        body = ("\n".join(lines) + "\n").encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("", 9464), Metrics).serve_forever()
