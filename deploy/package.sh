#!/usr/bin/env bash
# Build the MONAI Application Package (MAP) of deploy/ with the pinned packager (`holoscan package`, holoscan-cli
# 3.11.0 from the deploy extra): `make map MODELS=path/to/models` (the app's models folder: the bundle, or the bundle
# and study_model/). The app's requirements are the wheel built from this checkout (`make wheel`), copied into the
# staged application folder, with its deploy extra. Needs a Docker daemon: without one it says so and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${MODELS:?set MODELS to the models folder of the app: the exported bundle, or the bundle and study_model}"
[ -d "$MODELS" ] || { echo "make map: models folder $MODELS not found" >&2; exit 2; }
wheel=$(ls -t dist/p53hcc-*-py3-none-any.whl 2>/dev/null | head -1)
[ -n "$wheel" ] || { echo "make map: no wheel in dist/ (run make wheel)" >&2; exit 2; }
version=$(basename "$wheel" | cut -d- -f2)
TAG=${TAG:-p53hcc-app:$version}
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
cp -r deploy "$stage/app"
rm -f "$stage/app/package.sh"
cp "$wheel" "$stage/app/"
printf '%s\n' "# staged by deploy/package.sh: this checkout's wheel and its deploy extra" \
    "./$(basename "$wheel")[deploy]" > "$stage/app/requirements.txt"
cmd=(holoscan package "$stage/app" --config deploy/app.yaml --models "$MODELS" --tag "$TAG" --platform x86_64
     --sdk monai-deploy --sdk-version 4.0.0)
if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "make map: no Docker daemon reachable here (docker info failed). A MAP is a container image: run" \
         "\`make map MODELS=$MODELS\` where Docker runs. Staged requirements: ./$(basename "$wheel")[deploy]." >&2
    echo "The packaging command would be: ${cmd[*]}" >&2
    exit 2
fi
"${cmd[@]}"
echo "built $TAG; run it with: holoscan run -r $TAG -i INPUT_DIR -o OUTPUT_DIR" >&2
