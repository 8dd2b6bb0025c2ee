//! The lease table in DynamoDB: one item per key, taken and renewed with
//! conditional writes.
//!
//! Why DynamoDB: a team on AWS already runs it, it is strongly consistent
//! per item, and a conditional write is exactly the compare-and-set a lease
//! needs. Each call is one `UpdateItem` whose `ConditionExpression` states the
//! rule of [`crate::lease`] server side; a failed condition comes back as
//! `ConditionalCheckFailedException` (HTTP 400) and nothing is written
//! (<https://docs.aws.amazon.com/amazondynamodb/latest/developerguide/Expressions.ConditionExpressions.html>,
//! <https://docs.aws.amazon.com/amazondynamodb/latest/APIReference/API_UpdateItem.html>, section Errors).
//!
//! Table layout (create it with [`DynamoLeases::create_table`] or any IaC):
//! partition key `pk` (S) = the lease key; `holder` (S); `epoch` (N);
//! `expires_at` (N, Unix epoch ms). Items are never deleted (a release keeps
//! the epoch), so do not enable DynamoDB TTL on `expires_at`.
//!
//! IAM: `dynamodb:UpdateItem`, `dynamodb:Scan` on the table
//! (`dynamodb:CreateTable` only for [`DynamoLeases::create_table`]).

use crate::lease::{ttl_ms, Granted, Lease, LeaseError, LeaseRecord, LeaseStore};
use aws_sdk_dynamodb::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_dynamodb::types::{
    AttributeDefinition, AttributeValue, BillingMode, KeySchemaElement, KeyType, ReturnValue, ScalarAttributeType,
};
use aws_sdk_dynamodb::Client;
use std::collections::HashMap;
use std::time::Duration;

/// Take: no item, or an expired one (`expires_at < :now`).
pub const TAKE_CONDITION: &str = "attribute_not_exists(pk) OR expires_at < :now";
/// Renew or release: still mine, same epoch.
pub const HOLD_CONDITION: &str = "holder = :me AND epoch = :epoch";

/// Leases in one DynamoDB table.
#[derive(Clone, Debug)]
pub struct DynamoLeases {
    client: Client,
    table: String,
}

impl DynamoLeases {
    /// Leases in `table`, through `client` (built by the caller from its AWS config).
    pub fn new(client: Client, table: impl Into<String>) -> DynamoLeases {
        DynamoLeases { client, table: table.into() }
    }

    /// Create the lease table (on-demand billing, key `pk`) and wait until it
    /// is `ACTIVE`.
    ///
    /// # Errors
    /// [`LeaseError::Store`] when DynamoDB refuses (e.g. the table exists).
    pub async fn create_table(&self) -> Result<(), LeaseError> {
        let attr = AttributeDefinition::builder()
            .attribute_name("pk")
            .attribute_type(ScalarAttributeType::S)
            .build()
            .map_err(|e| self.err("CreateTable", "", e.to_string()))?;
        let key = KeySchemaElement::builder()
            .attribute_name("pk")
            .key_type(KeyType::Hash)
            .build()
            .map_err(|e| self.err("CreateTable", "", e.to_string()))?;
        self.client
            .create_table()
            .table_name(&self.table)
            .attribute_definitions(attr)
            .key_schema(key)
            .billing_mode(BillingMode::PayPerRequest)
            .send()
            .await
            .map_err(|e| self.err("CreateTable", "", DisplayErrorContext(&e).to_string()))?;
        for _ in 0..100 {
            let d = self
                .client
                .describe_table()
                .table_name(&self.table)
                .send()
                .await
                .map_err(|e| self.err("DescribeTable", "", DisplayErrorContext(&e).to_string()))?;
            if d.table().and_then(|t| t.table_status()).is_some_and(|s| s.as_str() == "ACTIVE") {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(self.err("DescribeTable", "", "the table did not become ACTIVE within 10 s".into()))
    }

    fn err(&self, op: &'static str, key: &str, message: String) -> LeaseError {
        LeaseError::Store { store: format!("dynamodb:{}", self.table), op, key: key.to_string(), message }
    }

    fn record(&self, key: &str, item: &HashMap<String, AttributeValue>) -> Result<LeaseRecord, LeaseError> {
        let bad = |message: String| LeaseError::Malformed {
            store: format!("dynamodb:{}", self.table),
            key: key.to_string(),
            message,
        };
        let s = |name: &str| -> Result<String, LeaseError> {
            item.get(name)
                .and_then(|v| v.as_s().ok())
                .cloned()
                .ok_or_else(|| bad(format!("attribute {name} (S) is missing")))
        };
        let n = |name: &str| -> Result<&str, LeaseError> {
            item.get(name)
                .and_then(|v| v.as_n().ok())
                .map(String::as_str)
                .ok_or_else(|| bad(format!("attribute {name} (N) is missing")))
        };
        Ok(LeaseRecord {
            key: s("pk")?,
            holder: s("holder")?,
            epoch: n("epoch")?.parse().map_err(|e| bad(format!("epoch: {e}")))?,
            expires_at_ms: n("expires_at")?.parse().map_err(|e| bad(format!("expires_at: {e}")))?,
        })
    }

    /// One conditional `UpdateItem` returning the new item; `Ok(None)` on
    /// `ConditionalCheckFailedException`.
    async fn update(
        &self,
        op: &'static str,
        key: &str,
        update: &str,
        condition: &str,
        values: Vec<(&str, AttributeValue)>,
    ) -> Result<Option<LeaseRecord>, LeaseError> {
        let mut req = self
            .client
            .update_item()
            .table_name(&self.table)
            .key("pk", AttributeValue::S(key.to_string()))
            .update_expression(update)
            .condition_expression(condition)
            .return_values(ReturnValue::AllNew);
        for (name, v) in values {
            req = req.expression_attribute_values(name, v);
        }
        match req.send().await {
            Ok(out) => {
                let item =
                    out.attributes().ok_or_else(|| self.err(op, key, "UpdateItem returned no attributes".into()))?;
                Ok(Some(self.record(key, item)?))
            }
            Err(SdkError::ServiceError(e)) if e.err().is_conditional_check_failed_exception() => Ok(None),
            Err(e) => {
                let code = e.code().unwrap_or("").to_string();
                Err(self.err(op, key, format!("{code} {}", DisplayErrorContext(&e))))
            }
        }
    }
}

fn n(v: impl ToString) -> AttributeValue {
    AttributeValue::N(v.to_string())
}

impl LeaseStore for DynamoLeases {
    async fn try_acquire(&self, key: &str, holder: &str, now_ms: i64, ttl: Duration) -> Granted {
        let exp = now_ms.saturating_add(ttl_ms(ttl));
        let got = self
            .update(
                "take",
                key,
                "SET holder = :me, expires_at = :exp ADD epoch :one",
                TAKE_CONDITION,
                vec![
                    (":me", AttributeValue::S(holder.to_string())),
                    (":exp", n(exp)),
                    (":now", n(now_ms)),
                    (":one", n(1)),
                ],
            )
            .await?;
        if let Some(r) = &got {
            tracing::info!(
                lease.key = key,
                lease.holder = holder,
                lease.epoch = r.epoch,
                lease.expires_at_ms = exp,
                "lease taken"
            );
        }
        Ok(got.map(Lease::from))
    }

    async fn renew(&self, lease: &Lease, now_ms: i64, ttl: Duration) -> Granted {
        let exp = now_ms.saturating_add(ttl_ms(ttl));
        let r = &lease.record;
        let got = self
            .update(
                "renew",
                &r.key,
                "SET expires_at = :exp",
                HOLD_CONDITION,
                vec![(":me", AttributeValue::S(r.holder.clone())), (":epoch", n(r.epoch)), (":exp", n(exp))],
            )
            .await?;
        if got.is_none() {
            tracing::warn!(lease.key = r.key, lease.holder = r.holder, lease.epoch = r.epoch, "lease lost: taken over");
        }
        Ok(got.map(Lease::from))
    }

    async fn release(&self, lease: &Lease) -> Result<bool, LeaseError> {
        let r = &lease.record;
        let got = self
            .update(
                "release",
                &r.key,
                "SET expires_at = :zero",
                HOLD_CONDITION,
                vec![(":me", AttributeValue::S(r.holder.clone())), (":epoch", n(r.epoch)), (":zero", n(0))],
            )
            .await?;
        Ok(got.is_some())
    }

    async fn list(&self, prefix: &str) -> Result<Vec<LeaseRecord>, LeaseError> {
        let mut out = Vec::new();
        let mut start: Option<HashMap<String, AttributeValue>> = None;
        loop {
            let mut req = self.client.scan().table_name(&self.table).consistent_read(true);
            if !prefix.is_empty() {
                req = req
                    .filter_expression("begins_with(pk, :prefix)")
                    .expression_attribute_values(":prefix", AttributeValue::S(prefix.to_string()));
            }
            let page = req
                .set_exclusive_start_key(start.take())
                .send()
                .await
                .map_err(|e| self.err("Scan", prefix, DisplayErrorContext(&e).to_string()))?;
            for item in page.items() {
                let key = item.get("pk").and_then(|v| v.as_s().ok()).cloned().unwrap_or_default();
                out.push(self.record(&key, item)?);
            }
            match page.last_evaluated_key() {
                Some(k) if !k.is_empty() => start = Some(k.clone()),
                _ => break,
            }
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }
}
