"""The modules of a checkpoint in the released SD layout, loaded the plain diffusers /
transformers way, for the tests' independent step-by-step references."""
import torch


def load_sd_modules(path):
    """(vae, unet, empty-prompt embedding) of the checkpoint folder ``path``: eval mode, the
    embedding of the released 2-token empty prompt (no padding), computed without grad."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer
    vae = AutoencoderKL.from_pretrained(path / 'vae').eval()
    unet = UNet2DConditionModel.from_pretrained(path / 'unet').eval()
    tokenizer = CLIPTokenizer.from_pretrained(path / 'tokenizer')
    text_encoder = CLIPTextModel.from_pretrained(path / 'text_encoder').eval()
    ids = tokenizer('', padding='do_not_pad', max_length=tokenizer.model_max_length,
                    truncation=True, return_tensors='pt').input_ids
    assert ids.shape == (1, 2)
    with torch.no_grad():
        return vae, unet, text_encoder(ids)[0]
