"""Training: the LDSeg objective against a float64 recomputation, exact resume, learning,
and the CLI on each data source."""
import numpy as np
import torch

from ldseg_rt import Segmenter
from ldseg_rt.cli import main as cli_main
from ldseg_rt.configs import get_config
from ldseg_rt.diffusion.schedules import cosine_alpha_bar
from ldseg_rt.models.checkpoint import load_checkpoint, read_checkpoint
from ldseg_rt.training.objectives import ldseg_losses
from ldseg_rt.training.trainer import Trainer, TrainSettings

CFG = get_config("small")


def random_examples(rng, count):
    """Images with a bright square labelled 1 and a dark disc labelled 2."""
    data = []
    for _ in range(count):
        label = np.zeros((128, 128), np.uint8)
        y, x = rng.integers(10, 70, size=2)
        label[y:y + 40, x:x + 40] = 1
        yy, xx = np.mgrid[:128, :128]
        label[(yy - y - 20) ** 2 + (xx - x - 20) ** 2 < 100] = 2
        image = (0.5 + 0.3 * (label == 1) - 0.3 * (label == 2) + 0.05 * rng.standard_normal((128, 128)))
        data.append((image[None].astype(np.float32), label))
    return data


def test_losses_match_float64_recomputation(small_model, rng):
    images = torch.from_numpy(rng.uniform(0, 1, (3, 1, 128, 128)).astype(np.float32))
    labels = torch.from_numpy(rng.integers(0, 3, (3, 128, 128)))
    t = torch.tensor([0, 517, 999])
    eps = torch.from_numpy(rng.standard_normal((3, 1, 16, 16)).astype(np.float32))
    small_model.eval()
    with torch.no_grad():
        got = ldseg_losses(small_model, images, labels, t, eps)
        z_l = small_model.label_encoder(labels[:, None].float()).double().numpy()
        z_i = small_model.image_encoder(images)
        ab = cosine_alpha_bar(t.numpy())[:, None, None, None]
        z_t = np.sqrt(ab) * z_l + np.sqrt(1 - ab) * eps.double().numpy()
        eps_hat = small_model.denoiser(torch.from_numpy(z_t).float(), z_i, t.float())
        probs = small_model.decoder(torch.from_numpy(z_t).float() - eps_hat).double().numpy()
    eps_hat = eps_hat.double().numpy()
    onehot = np.eye(3)[labels.numpy()].transpose(0, 3, 1, 2)
    ce = -np.mean(np.log(np.clip(np.take_along_axis(probs, labels.numpy()[:, None], 1), 1e-7, 1)))
    dice = 2 * (onehot * probs).sum() / (onehot.sum() + probs.sum() + 1e-6)
    mse = np.mean((eps.double().numpy() - eps_hat) ** 2)
    for name, want in {"ce": ce, "dice": dice, "mse": mse, "loss": ce + 2 * (1 - dice) + mse}.items():
        np.testing.assert_allclose(float(got[name]), want, rtol=2e-4, err_msg=name)


def states_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_continues_exactly(tmp_path, rng):
    data = random_examples(rng, 6)
    settings = TrainSettings(steps=2, batch_size=2, checkpoint_every=1, seed=int(rng.integers(1000)))
    straight = Trainer(CFG, settings, device="cpu")
    straight.fit(data, tmp_path / "straight.pt", progress=False)

    first = Trainer(CFG, TrainSettings(**{**settings.__dict__, "steps": 1}), device="cpu")
    first.fit(data, tmp_path / "half.pt", progress=False)
    resumed = Trainer.resume(tmp_path / "half.pt", settings, device="cpu")
    assert resumed.step == 1
    resumed.fit(data, tmp_path / "resumed.pt", progress=False)

    assert states_equal(straight.model.state_dict(), resumed.model.state_dict())
    assert states_equal(straight.ema.state_dict(), resumed.ema.state_dict())
    a, b = straight.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert a.keys() == b.keys() and all(states_equal(a[k], b[k]) for k in a)
    assert not states_equal(first.model.state_dict(), resumed.model.state_dict())


def test_checkpoint_holds_ema_weights_and_config(tmp_path, rng):
    trainer = Trainer(CFG, TrainSettings(steps=3, batch_size=2, ema=0.5), device="cpu")
    trainer.fit(random_examples(rng, 3), tmp_path / "m.pt", progress=False)
    payload = read_checkpoint(tmp_path / "m.pt")
    assert payload["config"] == CFG.to_dict() and payload["training"]["step"] == 3
    model = load_checkpoint(tmp_path / "m.pt")
    assert states_equal(model.denoiser.state_dict(), trainer.ema.state_dict())
    assert not states_equal(model.denoiser.state_dict(), trainer.model.denoiser.state_dict())


def test_training_learns(rng):
    data = random_examples(rng, 2)
    trainer = Trainer(CFG, TrainSettings(steps=16, batch_size=2, lr=3e-3, augment=False), device="cpu")
    first = [trainer.train_step(data)["loss"] for _ in range(2)]
    for _ in range(12):
        trainer.train_step(data)
    last = [trainer.train_step(data)["loss"] for _ in range(2)]
    assert np.mean(last) < 0.6 * np.mean(first)  # 0.51-0.53 over ten seeds; at random it stays near 1


def test_cli_trains_resumes_and_writes_an_inference_copy(tmp_path, rng, capsys):
    from ldseg_rt.io.images import write_label_png, write_png
    for i, (image, label) in enumerate(random_examples(rng, 3)):
        write_png(tmp_path / "img" / f"c{i}.png", (image[0] * 255).clip(0, 255).astype(np.uint8))
        write_label_png(tmp_path / "lab" / f"c{i}.png", label)
    out = tmp_path / "run.pt"
    common = ["--data", str(tmp_path / "img"), "--labels", str(tmp_path / "lab"), "--out", str(out),
              "--batch-size", "2", "--device", "cpu"]
    cli_main(["train", *common, "--steps", "1", "--seed", "5", "--no-augment"])
    cli_main(["train", *common, "--resume", str(out), "--steps", "2", "--inference-out", str(tmp_path / "slim.pt")])
    settings = read_checkpoint(out)["training"]["settings"]
    assert settings["steps"] == 2 and settings["seed"] == 5 and settings["augment"] is False
    assert read_checkpoint(out)["training"]["step"] == 2
    assert "training" not in read_checkpoint(tmp_path / "slim.pt")
    img = random_examples(rng, 1)[0][0][0]
    assert Segmenter(str(tmp_path / "slim.pt")).sample(img, n=1, steps=2).samples.shape == (1, 128, 128)
    assert "from step 1 to 2" in capsys.readouterr().out
