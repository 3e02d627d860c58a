#!/usr/bin/env python3
"""Example reward server for align's HTTP reward (standard library only; Pillow optional).

    python3 scripts/reward-server.py [--host 127.0.0.1] [--port 8765]

Wire format (any URL path, e.g. http://127.0.0.1:8765/score):
  request:  POST, Content-Type: application/json,
            {"prompts": ["...", ...], "images_png_base64": ["<standard base64 PNG>", ...]}
            (two lists of the same length B >= 1; images are RGB8 PNGs)
  answer:   200 {"scores": [s_0, ..., s_{B-1}]}, one finite float per image, in order;
            400 {"error": "..."} for a malformed request.
Example score: each image's mean brightness in [0, 1] (mean of its greyscale pixels / 255),
decoded with Pillow. Without Pillow the fallback is NOT brightness: it is
min(1, PNG byte length / 65536), a stand-in that only shows the plumbing works.
Replace `score` with your own model. Requests are handled in threads (ThreadingHTTPServer).
"""
import argparse, base64, binascii, io, json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

try:
    from PIL import Image, ImageStat
except ImportError:
    Image = None


def score(png: bytes, prompt: str) -> float:
    if Image is None:
        return min(1.0, len(png) / 65536.0)
    with Image.open(io.BytesIO(png)) as img:
        return ImageStat.Stat(img.convert("L")).mean[0] / 255.0


class Handler(BaseHTTPRequestHandler):
    def reply(self, status, obj):
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self):
        try:
            req = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)))
            prompts, images = req["prompts"], req["images_png_base64"]
            if not (isinstance(prompts, list) and isinstance(images, list) and len(prompts) == len(images)):
                raise ValueError("prompts and images_png_base64 must be lists of the same length")
            pngs = [base64.b64decode(s, validate=True) for s in images]
            scores = [float(score(p, t)) for p, t in zip(pngs, prompts)]
        except (ValueError, KeyError, TypeError, binascii.Error, OSError) as e:
            return self.reply(400, {"error": f"{type(e).__name__}: {e}"})
        self.reply(200, {"scores": scores})


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="Example reward server for align's HTTP reward.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    server = ThreadingHTTPServer((args.host, args.port), Handler)
    print(f"reward-server: listening on http://{args.host}:{args.port}/ "
          f"(score: {'mean brightness' if Image else 'PNG size fallback, Pillow missing'})", flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
