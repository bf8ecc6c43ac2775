"""Frames for the face-recognition workload, synthesised at run time.

No video with a licence we could ship was at hand, so a camera's frames are
made here: a noisy, slowly moving background with the bundled face
(``face.jpg``) composited at a position that drifts from frame to frame;
every ``empty_every``-th frame shows no face.  ``face.jpg`` is cropped from
the "astronaut" picture (Eileen Collins, NASA; public domain as a work of
the US federal government) as shipped by scikit-image in
``skimage/data/astronaut.png``.

Each frame is a line ``ID BASE64-JPEG`` as the flink gateway takes it;
``expected`` says how many faces each one shows.
"""
import base64
import os

FACE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "face.jpg")


def make(count, width=320, height=240, empty_every=5, seed=1, prefix="f"):
    """``count`` frames: ``[(id, line, faces_shown)]``."""
    import cv2
    import numpy as np
    rng = np.random.default_rng(seed)
    face = cv2.imread(FACE)
    fh, fw = face.shape[:2]
    base = rng.integers(40, 200, (height // 8, width // 8, 3), dtype=np.uint8)
    base = cv2.resize(base, (width, height), interpolation=cv2.INTER_LINEAR)
    out = []
    for n in range(count):
        frame = np.roll(base, n * 3, axis=1).copy()
        noise = rng.integers(0, 12, frame.shape, dtype=np.uint8)
        frame = cv2.add(frame, noise)
        shown = 0 if empty_every and n % empty_every == empty_every - 1 else 1
        if shown:
            x = (n * 7) % (width - fw)
            y = (n * 5) % (height - fh)
            frame[y:y + fh, x:x + fw] = face
        ok, jpg = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 80])
        rid = "%s%06d" % (prefix, n)
        out.append((rid, rid + " " + base64.b64encode(jpg.tobytes()).decode(), shown))
    return out


def main():
    """``python frames.py COUNT OUT [PREFIX]``: frames as lines in OUT, and
    how many faces each shows in OUT.expected (JSON)."""
    import json
    import sys
    count, out = int(sys.argv[1]), sys.argv[2]
    prefix = sys.argv[3] if len(sys.argv) > 3 else "f"
    made = make(count, prefix=prefix)
    with open(out, "w") as f:
        f.writelines(line + "\n" for _, line, _ in made)
    with open(out + ".expected", "w") as f:
        json.dump({rid: shown for rid, _, shown in made}, f)


if __name__ == "__main__":
    main()
