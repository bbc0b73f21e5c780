#!/usr/bin/env python
"""Write COCO-Object label PNGs (0 background, 1..80 things, 255 crowd) from a COCO instances JSON.

Example:
    python tools/convert_coco_object.py data/coco/annotations/instances_val2017.json data/coco/annotations/val2017

The painting rule (smaller instances over larger ones, crowd -> 255 where no instance lies) is documented in
textseg/data/coco_object.py.
"""

import argparse
import sys

from textseg.data.coco_object import convert_coco_object
from textseg.errors import UserError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("instances_json", help="COCO annotations/instances_<split>2017.json")
    parser.add_argument("out_dir", help="output folder, conventionally <coco>/annotations/<split>2017")
    args = parser.parse_args(argv)
    try:
        written = convert_coco_object(args.instances_json, args.out_dir)
    except UserError as err:
        print(f"convert_coco_object: error: {err}", file=sys.stderr)
        return 2
    print(f"wrote {len(written)} label PNGs to {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
