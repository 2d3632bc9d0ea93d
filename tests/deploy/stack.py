#!/usr/bin/env python3
"""Creates deploy/voicegraph.template.yaml as a stack in moto's CloudFormation, for
tests/api/deploy.rs, and prints what the processes of that stack would be given, as JSON.

moto models most of the template's resource types. For those it does not (asked of moto itself,
`resource_class_from_type`), this script stands in, and says so in its output (`standins`):

- Secrets Manager secrets are created through the Secrets Manager API, with the template's
  SecretString, or with a generated password as GenerateSecretString would make one.
- The ElastiCache replication group is the Redis given by --redis (host:port).
- The SNS subscription is made through the SNS API, with raw message delivery, after the stack.
- Everything else it does not model is left out (`skipped`): alarms, scaling policies, the
  queue, bucket and topic policies, the secret's attachment to the database and the cache's
  subnet group. The processes use none of them.

References to the stood-in resources (Ref, Fn::GetAtt, Fn::Sub) are replaced by their values
before the template goes to moto. The environment of each instance group is then read back from
its launch template's user data, as an instance would get it: the lines of the
/etc/voicegraph/voicegraph.env here-document.

Usage: stack.py --endpoint URL --stack NAME --redis HOST:PORT --admin-key KEY
       stack.py --dump   (the template in long form, as JSON; no AWS)
"""

import argparse
import base64
import json
import re
import secrets
import string
import sys
import time

import yaml

TEMPLATE = "deploy/voicegraph.template.yaml"


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short-form tags, turned into their long forms."""


def _construct(tag):
    def construct(loader, node):
        if isinstance(node, yaml.ScalarNode):
            value = loader.construct_scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            value = loader.construct_sequence(node, deep=True)
        else:
            value = loader.construct_mapping(node, deep=True)
        if tag == "Ref":
            return {"Ref": value}
        if tag == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
        return {f"Fn::{tag}": value}

    return construct


for _tag in ["Ref", "Sub", "GetAtt", "Join", "Select", "GetAZs", "If", "Not", "Equals",
             "Base64", "Split", "FindInMap", "And", "Or", "Condition", "ImportValue"]:
    CfnLoader.add_constructor(f"!{_tag}", _construct(_tag))


def generated_password(spec):
    alphabet = string.ascii_letters + string.digits
    if not spec.get("ExcludePunctuation"):
        alphabet += "".join(c for c in string.punctuation if c not in spec.get("ExcludeCharacters", ""))
    return "".join(secrets.choice(alphabet) for _ in range(spec.get("PasswordLength", 32)))


def substitute(value, refs, attrs):
    """`value` with Ref/GetAtt/Sub references to stood-in resources replaced."""
    if isinstance(value, list):
        return [substitute(v, refs, attrs) for v in value]
    if not isinstance(value, dict):
        return value
    if set(value) == {"Ref"} and value["Ref"] in refs:
        return refs[value["Ref"]]
    if set(value) == {"Fn::GetAtt"}:
        name, attr = value["Fn::GetAtt"]
        if (name, attr) in attrs:
            return attrs[(name, attr)]
    if set(value) == {"Fn::Sub"}:
        body = value["Fn::Sub"]
        text, variables = (body, {}) if isinstance(body, str) else (body[0], body[1])
        for name, v in refs.items():
            text = text.replace("${" + name + "}", v)
        for (name, attr), v in attrs.items():
            text = text.replace("${" + f"{name}.{attr}" + "}", v)
        variables = substitute(variables, refs, attrs)
        # A variable whose value is now plain text goes into the text.
        for k in [k for k, v in variables.items() if isinstance(v, str)]:
            text = text.replace("${" + k + "}", variables.pop(k))
        return {"Fn::Sub": [text, variables] if variables else text}
    return {k: substitute(v, refs, attrs) for k, v in value.items()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dump", action="store_true")
    p.add_argument("--endpoint")
    p.add_argument("--stack")
    p.add_argument("--redis", help="host:port standing in for ElastiCache")
    p.add_argument("--admin-key")
    p.add_argument("--template", default=TEMPLATE)
    a = p.parse_args()
    if a.dump:
        with open(a.template) as f:
            json.dump(yaml.load(f, Loader=CfnLoader), sys.stdout, indent=1)
        return
    if not (a.endpoint and a.stack and a.redis and a.admin_key):
        p.error("--endpoint, --stack, --redis and --admin-key are required")
    import boto3
    from moto.cloudformation.parsing import resource_class_from_type

    kw = dict(endpoint_url=a.endpoint, region_name="us-east-1",
              aws_access_key_id="test", aws_secret_access_key="test")
    with open(a.template) as f:
        template = yaml.load(f, Loader=CfnLoader)
    resources = template["Resources"]

    unmodelled = {name: r for name, r in resources.items() if resource_class_from_type(r["Type"]) is None}
    refs, attrs, standins, skipped = {}, {}, {}, {}
    sm = boto3.client("secretsmanager", **kw)
    parameters = {"ArtifactBucket": "vg-releases", "ArtifactKey": "releases/test/voicegraph",
                  "BootstrapAdminKey": a.admin_key}
    for name, r in unmodelled.items():
        props = r.get("Properties", {})
        if r["Type"] == "AWS::SecretsManager::Secret":
            if "SecretString" in props:
                text = props["SecretString"]["Fn::Sub"]
                for k, v in parameters.items():
                    text = text.replace("${" + k + "}", v)
            else:
                spec = props["GenerateSecretString"]
                body = json.loads(spec.get("SecretStringTemplate", "{}"))
                body[spec["GenerateStringKey"]] = generated_password(spec)
                text = json.dumps(body)
            secret_name = props["Name"]["Fn::Sub"].replace("${AWS::StackName}", a.stack)
            arn = sm.create_secret(Name=secret_name, SecretString=text)["ARN"]
            refs[name] = arn
            standins[name] = f"secret {secret_name} created through the Secrets Manager API"
        elif r["Type"] == "AWS::ElastiCache::ReplicationGroup":
            host, port = a.redis.rsplit(":", 1)
            attrs[(name, "PrimaryEndPoint.Address")] = host
            attrs[(name, "PrimaryEndPoint.Port")] = port
            standins[name] = f"the test's Redis at {a.redis}"
        elif r["Type"] == "AWS::SNS::Subscription" and props.get("Protocol") == "sqs":
            standins[name] = "subscribed through the SNS API after the stack, raw message delivery"
        else:
            skipped[name] = r["Type"]
    for name in unmodelled:
        del resources[name]
    template["Resources"] = substitute(resources, refs, attrs)
    template["Outputs"] = substitute(template["Outputs"], refs, attrs)

    cert = boto3.client("acm", **kw).request_certificate(DomainName="api.example.com")["CertificateArn"]
    parameters["CertificateArn"] = cert
    cf = boto3.client("cloudformation", **kw)
    cf.create_stack(
        StackName=a.stack,
        TemplateBody=json.dumps(template),
        Capabilities=["CAPABILITY_IAM"],
        Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in parameters.items()],
    )
    deadline = time.time() + 120
    while True:
        stack = cf.describe_stacks(StackName=a.stack)["Stacks"][0]
        if not stack["StackStatus"].endswith("_IN_PROGRESS") or time.time() > deadline:
            break
        time.sleep(0.2)
    if stack["StackStatus"] != "CREATE_COMPLETE":
        sys.exit(f"stack {a.stack}: {stack['StackStatus']} {stack.get('StackStatusReason')}")
    outputs = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}

    # The subscription moto does not model: the events topic delivers raw to the realtime queue.
    sqs = boto3.client("sqs", **kw)
    sub = unmodelled.get("RealtimeSubscription", {}).get("Properties")
    if sub is not None:
        queue_arn = sqs.get_queue_attributes(
            QueueUrl=outputs["RealtimeQueueUrl"], AttributeNames=["QueueArn"]
        )["Attributes"]["QueueArn"]
        boto3.client("sns", **kw).subscribe(
            TopicArn=outputs["EventsTopicArn"], Protocol=sub["Protocol"], Endpoint=queue_arn,
            Attributes={"RawMessageDelivery": "true" if sub.get("RawMessageDelivery") else "false"},
            ReturnSubscriptionArn=True,
        )

    physical = {r["LogicalResourceId"]: r["PhysicalResourceId"]
                for r in cf.list_stack_resources(StackName=a.stack)["StackResourceSummaries"]}
    ec2 = boto3.client("ec2", **kw)
    envs = {}
    for group, template_name in [("api", "ApiLaunchTemplate"), ("worker", "WorkerLaunchTemplate")]:
        version = ec2.describe_launch_template_versions(LaunchTemplateId=physical[template_name])[
            "LaunchTemplateVersions"][0]
        user_data = base64.b64decode(version["LaunchTemplateData"]["UserData"]).decode()
        m = re.search(r"<<'ENV'\n(.*?)\nENV\n", user_data, re.S)
        if m is None:
            sys.exit(f"{template_name}: no /etc/voicegraph/voicegraph.env here-document in the user data")
        env = {}
        for line in m.group(1).splitlines():
            key, _, value = line.partition("=")
            env[key] = value
        envs[group] = {"env": env, "user_data": user_data}
    json.dump({
        "stack": a.stack,
        "outputs": outputs,
        "api": envs["api"],
        "worker": envs["worker"],
        "resources": sorted(physical),
        "standins": standins,
        "skipped": skipped,
    }, sys.stdout, indent=1)


if __name__ == "__main__":
    main()
