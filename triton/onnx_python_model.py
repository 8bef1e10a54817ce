"""A Triton python-backend model that runs the ONNX export with onnxruntime.

triton/deployer.py --backend python copies this file to <repository>/<model>/1/model.py,
beside model.onnx. It is for servers that have the python backend only, such as the Triton
server bundled in nvidia-pytriton (triton/server.py); the tritonserver container serves
model.onnx directly with its onnxruntime backend instead (--backend onnxruntime).

Inputs and outputs are the ones config.pbtxt names, in its order. Requests that the dynamic
batcher gathered run as one onnxruntime call per input shape. Parameters read from
config.pbtxt: intra_op_thread_count (onnxruntime's threads; 0: its default, one per core).
"""

import collections
import json
from pathlib import Path

import numpy as np
import onnxruntime
import triton_python_backend_utils as pb_utils

ONNX_FILE = "model.onnx"


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        parameters = {key: value["string_value"]
                      for key, value in config.get("parameters", {}).items()}
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = int(parameters.get("intra_op_thread_count", "0"))
        providers = ["CPUExecutionProvider"]
        if (args["model_instance_kind"] == "GPU"
                and "CUDAExecutionProvider" in onnxruntime.get_available_providers()):
            device = {"device_id": int(args["model_instance_device_id"])}
            providers.insert(0, ("CUDAExecutionProvider", device))
        path = Path(__file__).resolve().parent / ONNX_FILE
        self.session = onnxruntime.InferenceSession(str(path), options, providers=providers)
        self.input_names = [tensor["name"] for tensor in config["input"]]
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        by_shape = collections.defaultdict(list)
        for index, request in enumerate(requests):
            arrays = [pb_utils.get_input_tensor_by_name(request, name).as_numpy()
                      for name in self.input_names]
            by_shape[tuple(array.shape[1:] for array in arrays)].append((index, arrays))
        for members in by_shape.values():
            for index, response in self._run_batch(members):
                responses[index] = response
        return responses

    def _run_batch(self, members):
        """(request index, response) for requests of one shape, run as one batch."""
        feed = {name: np.concatenate([arrays[k] for _, arrays in members])
                for k, name in enumerate(self.input_names)}
        try:
            outputs = self.session.run(self.output_names, feed)
        except Exception as error:  # every request of the batch gets the error, not a crash
            failure = pb_utils.TritonError(f"onnxruntime failed: {error}")
            return [(index, pb_utils.InferenceResponse(error=failure)) for index, _ in members]
        results, start = [], 0
        for index, arrays in members:
            stop = start + arrays[0].shape[0]
            tensors = [pb_utils.Tensor(name, output[start:stop])
                       for name, output in zip(self.output_names, outputs)]
            results.append((index, pb_utils.InferenceResponse(output_tensors=tensors)))
            start = stop
        return results
