package agent_policy

import future.keywords.in
import input

default AllowRequestsFailingPolicy := false
default CreateContainerRequest := false
default ExecProcessRequest := false

CreateContainerRequest if {
    some container in policy_data.containers
    input.OCI.Annotations["io.kubernetes.cri.container-name"] == container.name
}

policy_data := {
  "containers": [
    {"name": "pause"},
    {"name": "orders"},
    {"name": "metrics"},
    {"name": "skr"}
  ]
}
