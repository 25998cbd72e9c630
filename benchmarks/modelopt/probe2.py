from common import *
pipe = load_pipe()
m, _ = mo_calibrate(pipe, mo_config("FP8_DEFAULT_CFG"), prompts=PROMPTS[:1], steps=2)
q = m.transformer_blocks[0].attn1.to_q
iq = q.input_quantizer
print(type(iq._amax), type(iq._amax).__mro__[:3], iq._amax.dtype, iq._amax.shape)
print([ (n, type(b)) for n, b in iq.named_buffers()])
print(type(q.weight_quantizer._amax))
